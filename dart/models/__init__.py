"""Model loading: the embedded real models, hub models, local folders and random-weight builds."""
