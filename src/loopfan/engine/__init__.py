"""The connection engine: worker processes that open, hold and close connections per a Plan."""
