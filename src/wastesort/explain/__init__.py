"""What a classifier looks at: Captum attributions (:mod:`.attribution`), the figures
(:mod:`.figures`) and the Markdown report (:mod:`.report`)."""
