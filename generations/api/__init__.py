"""Omniweb's API layer: personal-token API, the OpenAI-compatible facade, outbound webhooks."""
