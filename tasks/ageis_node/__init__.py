"""ageis_node"""
