"""Read-only reports: funnel, lists, outcome review, journey; they never write."""
