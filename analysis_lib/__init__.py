"""The library behind the executable book on the learning dynamics of preference alignment."""

import warnings

# transformers / datasets / huggingface_hub import tqdm.auto, which warns inside a notebook kernel without
# ipywidgets; the book shows plain-text progress bars, so that one warning is noise (filtered once, here).
warnings.filterwarnings("ignore", message="IProgress not found")
