"""Admin commands: `sfworker accounts check` (does an account work?) and `sfworker accounts
authorize` (the OAuth web-server flow that gives a refresh token)."""
