"""api-gateway-app: the only entry point. Proxies movies and orders, publishes billing orders."""
