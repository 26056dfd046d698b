"""What every bridge here shares: configuration, the mautrix appservice, encryption, storage."""
