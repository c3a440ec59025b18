"""Security controls: TLS and mutual TLS with rotation, JWT authentication, brute-force limits,
listener hardening, encryption at rest and the `runner certs` tooling."""
