"""Federation plumbing: keys, request signing, discovery and the outbound transport.

Pure protocol (no I/O):
  xmatrix       the X-Matrix Authorization header: build, parse, rebuild the signed JSON
  server_keys   /_matrix/key/v2 responses: build ours, check others' (7-day validity cap)
  discovery     server name resolution rules (.well-known, SRV, static routes), with
                DNS and HTTPS injected

With collaborators injected:
  keyring       other servers' verify keys: pinned, cached, fetched, via notaries
  key_server    our keys (LocalKeys) and the notary answers (KeyNotary)
  auth          FederationAuthenticator: inbound X-Matrix checks for the servlets
  transport     FederationClient: signed JSON over TLS, allowlist and IP checks first
  tls, dns      the TLS and IP-range policy; Twisted DNS adapters
  components    build_federation(config, ...): the above wired, for app.py
"""
