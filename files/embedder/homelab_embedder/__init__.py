"""The embedder node's services: embedding server, vector indexer (host-side code).

Installed by tasks/embedder/embedding_server.py into /opt/embedder/app and run from the embedder's
virtual environment; nothing here runs on the controller.
"""
