"""Azure on this machine, offline: what runs the whole service without a subscription.

Azurite (blob, queue and table storage over HTTPS with bearer tokens), a managed identity endpoint that the
real azure-identity code gets its tokens from, a stand-in for Azure OpenAI's Responses, Files, Uploads and
Containers APIs, and a minimal host for the app's HTTP and queue functions. `scripts/start.sh --offline`
starts them for a newcomer; the test suite starts the same code.
"""
