// Builds the console into dist/, which h5depotd serves at "/"
// (--http-console-dir). Paths are relative, so that it also works behind a
// proxy that mounts the gateway under a prefix.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 8192 },
});
