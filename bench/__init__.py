"""Load generation, fleet simulation, replay and the demo."""
