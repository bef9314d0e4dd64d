"""A job's metrics as files: an SVG chart and a TensorBoard event file, each written by
code of our own (no plotting or TensorFlow dependency on the server)."""
