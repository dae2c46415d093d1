"""jaxgpt's parameters to and from other frameworks: Hugging Face, Modalities, and warm starts from either."""
