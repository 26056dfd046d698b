"""The composition root's areas: each module builds one area from explicit collaborators.

``homeserver.app.build_homeserver`` calls them in order (core accounts, rooms and messaging,
media, client routes, room federation, then the optional parts); each returns a small dataclass.
"""
