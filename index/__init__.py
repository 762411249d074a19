"""FAISS retrieval of solved questions."""
