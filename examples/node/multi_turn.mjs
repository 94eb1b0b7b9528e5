// The vendor's Node.js multi-turn sample with a text-only first turn, unchanged except for baseURL.
import OpenAI from "openai";
const openai = new OpenAI({
    apiKey: process.env.DASHSCOPE_API_KEY,
    baseURL: 'http://127.0.0.1:8000/compatible-mode/v1'
});
const completion = await openai.chat.completions.create({
    model: "qwen3-omni-flash",
    messages: [
        {
            "role": "user",
            "content": [{ "type": "text", "text": "这段音频在说什么" }],
        },
        {
            "role": "assistant",
            "content": [{ "type": "text", "text": "这段音频在说:欢迎使用阿里云" }],
        },
        {
            "role": "user",
            "content": [{ "type": "text", "text": "介绍一下这家公司?" }]
        }],
    stream: true,
    stream_options: {
        include_usage: true
    },
    modalities: ["text"]
});
for await (const chunk of completion) {
    if (Array.isArray(chunk.choices) && chunk.choices.length > 0) {
        console.log(chunk.choices[0].delta);
    } else {
        console.log(chunk.usage);
    }
}
