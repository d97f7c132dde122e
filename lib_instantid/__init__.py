"""InstantID for Stable Diffusion WebUIs: host-agnostic core (never imports the WebUI's `modules`)."""
