"""`tispipe eval`: compare models on held-out pairs."""
