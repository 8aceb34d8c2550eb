"""Settings for the dns group (unbound). Every key, its form and default: docs/data-keys.md."""

# Upstream resolvers (IPv4) unbound forwards every query to. [] (the default): unbound resolves
# from the root servers itself. DNSSEC is validated either way, so a forwarder must pass DNSSEC
# records through (public validating resolvers do; many ISP routers do not): behind one that
# strips them, every signed name fails validation and clients fall back.
dns_forwarders = []
