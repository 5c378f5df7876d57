"""``base``: the untouched base model. Nothing is retrieved, picked or trained on.

Its result still records σ_0² = Σ_rows k(x*, x*), the uncertainty before any data.
"""

from sift.methods import Method, register_method

register_method(Method("base", None, "the untouched base model (no data, no step)", color="#7f7f7f"))
