"""Copy the files an Azure OpenAI Code Interpreter run produced into Blob Storage and sign links to them."""
