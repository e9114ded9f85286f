"""``kubectl kubetrain``: compare, promote, roll back and explain kubetrain objects with your kubeconfig."""
