"""The media repository: uploads, downloads, thumbnails, URL previews and retention.

``storage`` (the pluggable byte store), ``repository`` (metadata in the database),
``thumbnailer`` (Pillow, pure functions), ``service`` (the rules), ``safe_http`` and
``preview`` (URL previews that cannot reach private networks).  The HTTP servlets are in
:mod:`homeserver.api.media`; :mod:`homeserver.app` wires them.
"""
