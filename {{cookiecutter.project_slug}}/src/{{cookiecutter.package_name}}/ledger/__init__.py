"""The task ledger (R33): every task's durable state, so a Redis failover cannot lose work."""
