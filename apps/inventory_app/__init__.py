"""inventory-app: the movies REST API backed by the inventory database."""
