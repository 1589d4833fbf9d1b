"""The host side of serving: requests, the scheduler loop."""
