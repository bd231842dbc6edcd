"""The scope: the browser explainer and live monitor, drawn from engine events."""
