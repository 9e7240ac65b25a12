import React from 'react';
import { createRoot } from 'react-dom/client';
import '@h5web/app/styles.css';
import './console.css';
import Console from './Console.jsx';

createRoot(document.getElementById('root')).render(
  <React.StrictMode>
    <Console />
  </React.StrictMode>,
);
