import neostandard from 'neostandard'
import tseslint from 'typescript-eslint'

export default [
  ...neostandard({
    ts: true, // types/ imports the built package by name: tsd checks it after the build.
    ignores: ['dist/**', 'coverage/**', '.tap/**', 'node_modules/**', 'types/**']
  }),
  {
    files: ['**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname }
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      // `void promise` is how a deliberately unawaited promise is marked for no-floating-promises.
      'no-void': ['error', { allowAsStatement: true }]
    }
  }
]
