# The vendor's first sample, unchanged except for base_url: text in, text and speech out.
# pip install numpy soundfile "openai<3.25"   (newer openai: see the note below)
import os
import base64
import soundfile as sf
import numpy as np
from openai import OpenAI
# 1. 初始化客户端
client = OpenAI(
    api_key=os.getenv("DASHSCOPE_API_KEY"),  # 确认已配置环境变量
    base_url="http://127.0.0.1:8000/compatible-mode/v1",
)
# 2. 发起请求
try:
    completion = client.chat.completions.create(
        model="qwen3-omni-flash",
        messages=[{"role": "user", "content": "你是谁"}],
        modalities=["text", "audio"],  # 指定输出文本和音频
        audio={"voice": "Cherry", "format": "wav"},
        stream=True,  # 必须设置为 True
        stream_options={"include_usage": True},
    )
    # 3. 处理流式响应并解码音频
    print("模型回复:")
    audio_base64_string = ""
    for chunk in completion:
        # 处理文本部分
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="")
        # 收集音频部分
        if chunk.choices and hasattr(chunk.choices[0].delta, "audio") and chunk.choices[0].delta.audio:
            # openai >= 3.25 types delta.audio and this line fails ("no attribute 'get'"):
            # there, write chunk.choices[0].delta.audio.data or "" (docs/clients.md).
            audio_base64_string += chunk.choices[0].delta.audio.get("data", "")
    # 4. 保存音频文件
    if audio_base64_string:
        wav_bytes = base64.b64decode(audio_base64_string)
        audio_np = np.frombuffer(wav_bytes, dtype=np.int16)
        sf.write("audio_assistant.wav", audio_np, samplerate=24000)
        print("\n音频文件已保存至:audio_assistant.wav")
except Exception as e:
    print(f"请求失败: {e}")
