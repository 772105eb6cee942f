"""Reference models that BiXT is compared against."""
