"""AIM itself: backbone resolution, prompt building for the four modes, aggregation and the projector."""
