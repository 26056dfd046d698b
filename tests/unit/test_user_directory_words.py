"""The user directory's words: how entries and queries are split and folded."""

from __future__ import annotations

from homeserver.storage.user_directory import _prefix_end, entry_words, fold, query_words


def test_fold_ignores_case_accents_and_compatibility_forms() -> None:
    assert fold("Hélène ÇA") == "helene ca"
    assert fold("ＡＢＣ①") == "abc1"  # full-width letters, circled digit
    assert fold("Straße") == "strasse"


def test_entry_words_from_localpart_display_name_and_server() -> None:
    words = entry_words("@jean.dupont-interieur.gouv.fr:agent1.tchap.example", "Jean Dupont [interieur.gouv.fr]")
    assert words == ["jean", "dupont", "interieur", "gouv", "fr", "agent1", "tchap", "example"]
    assert entry_words("@user_71:hs", None) == ["user", "71", "hs"]


def test_query_words_are_distinct_and_capped() -> None:
    assert query_words("  Jean   JEAN dupont ") == ["jean", "dupont"]
    assert query_words("@:!?") == []
    assert len(query_words(" ".join(f"w{i}" for i in range(30)))) == 10


def test_prefix_end_bounds_exactly_the_words_with_the_prefix() -> None:
    words = ["jea", "jean", "jeanne", "jeb", "je", "jeaz", "jeb0"]
    assert sorted(w for w in words if "jea" <= w < _prefix_end("jea")) == ["jea", "jean", "jeanne", "jeaz"]
    assert _prefix_end("a\ud7ff") == "a\ue000"  # never a surrogate
