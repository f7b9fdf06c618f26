"""The node agent: probes hardware, supervises engines, bridges the bus to them."""
