"""Government policy, one module per rule set (France's Tchap modules, built in).

- :mod:`.access_rules`: ``im.vector.room.access_rules`` (restricted / unrestricted / direct);
- :mod:`.invites`: Tchap's domain rule checker and the limits on external users;
- :mod:`.validity`: account validity (expiry, renewal e-mails, admin renewal);
- :mod:`.email_accounts`: e-mail based accounts, 3PID validation, the address -> server mapping;
- :mod:`.privacy`: profile and user directory privacy;
- :mod:`.mailer`: sending mail over SMTP;
- :mod:`.wiring`: ``build_policy``, the one place that plugs the rules into the services.

Every rule answers with a reason a person can read; the event checks plug into
``RoomEventService.event_policy_checks`` and so apply to local and received events alike.
"""
