"""Measurements of a world model beyond closed-loop success: inverse-dynamics probes, open-loop
fidelity, CEM planning error, image metrics."""
