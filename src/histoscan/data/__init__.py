"""Data: every patch source a user brings, the packed store, transforms, splits and audits."""
