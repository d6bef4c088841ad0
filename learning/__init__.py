"""How the product learns on a CPU: the instant model and the active-learning query strategies (numpy; scikit-learn
is imported when a model is first fitted)."""
