"""safecrowd: implicit safety alignment from crowd preferences.

``safecrowd_llm.core`` is the domain-free method (pure torch); the language-model track lives beside
it and the control track in the checkout's top-level ``control`` package.
"""

__version__ = "0.1.0"
