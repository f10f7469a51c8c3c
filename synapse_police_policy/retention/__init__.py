"""The retention tiers: room policy, the sweep that redacts expired content."""
