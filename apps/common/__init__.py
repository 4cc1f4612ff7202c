"""Code shared by inventory-app, billing-app and api-gateway-app (copied into each image)."""
