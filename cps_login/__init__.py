"""Login broker (card + PIN in, short-lived access token out) and patient-data access rules."""
