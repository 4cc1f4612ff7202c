"""billing-app: consumes orders from the billing queue into the billing database; read-only HTTP API."""
