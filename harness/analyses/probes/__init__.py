"""Parts of the action-relevance probe protocol (``harness probe``, see ``harness/analyses/probe.py``):
scores (R^2, Pearson r), the ridge and MLP probes, and visual corruptions."""
