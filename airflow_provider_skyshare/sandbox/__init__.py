"""Local Kubernetes clusters without Docker, built from Go modules (`skyshare-sandbox`).

Never imported by the provider's runtime code; never imports the provider.
"""
