"""XMPP bridge: one-to-one chats, MUC rooms and presence between an XMPP server and Matrix,
as an XMPP component (XEP-0114) built on slixmpp (see README.md, "Bridges")."""
