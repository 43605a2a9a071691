"""hark.server"""
