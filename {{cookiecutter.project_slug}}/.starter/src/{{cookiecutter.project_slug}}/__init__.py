# {{ cookiecutter.project_name }}: your code. src/ is on PYTHONPATH in the container, so `import {{ cookiecutter.project_slug }}` works
# in notebooks and scripts.
