"""hark.llm"""
