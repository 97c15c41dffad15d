"""The bus side: inputs → dispatcher → store → outputs, served by one aiohttp app."""
