"""Bridges to legacy systems, each its own process and package (see README.md, "Bridges").

They talk to the homeserver only through the Application Service API, like any third-party
bridge would; none of them imports ``homeserver``.
"""
